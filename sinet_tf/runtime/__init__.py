"""One way to read and run a ``.tflite`` file: the file reader (:mod:`.model_file`), the
LiteRT interpreter runner (:mod:`.interpreter`) and what a model's output means
(:mod:`.heads`). Imports no TensorFlow."""

from sinet_tf.runtime.heads import PERSON_CLASS, person_probability_from_output
from sinet_tf.runtime.interpreter import TFLiteRunner, make_interpreter, quantization_of
from sinet_tf.runtime.model_file import (
                                         TFLiteContents,
                                         count_weight_params,
                                         io_details,
                                         is_constant,
                                         op_name,
                                         output_kind,
                                         pack_model,
                                         parse_model,
                                         read_contents,
                                         read_tflite,
                                         type_name,
)

__all__ = ["PERSON_CLASS", "TFLiteContents", "TFLiteRunner", "count_weight_params", "io_details", "is_constant",
           "make_interpreter", "op_name", "output_kind", "pack_model", "parse_model", "person_probability_from_output",
           "quantization_of", "read_contents", "read_tflite", "type_name"]
