"""The int8 rewrite passes, one module per rewrite: the pass function (``model`` ->
equivalent ``model``) and the Keras layers it emits. Their order, names and the pipeline
that runs them are in :mod:`sinet_tf.export.rewrite`; the graph reading and editing they
share is :mod:`sinet_tf.export.passes.graph`."""
