"""One module per architecture; importing this package registers every model."""

from sinet_tf.models import extremec3net, sinet  # noqa: F401
from sinet_tf.models import portraitnet  # noqa: F401
