"""TFLite metadata that MediaPipe Tasks' ``ImageSegmenter`` (and other TFLite-metadata
readers) need: an image input with its normalization, category labels, and the output
described as a segmentation mask.

Written with MediaPipe's own metadata writer (``mediapipe.tasks.python.metadata.
metadata_writers.image_segmenter``; install with ``pip install --no-deps mediapipe==1.2.2``:
its declared dependency opencv-contrib-python would be a second owner of ``cv2``).
mediapipe 1.2.2's wheel lacks one native helper that the writer imports,
``_pywrap_metadata_version.GetMinimumMetadataParserVersion``; it only
computes the ``min_parser_version`` string from which schema fields a metadata buffer
uses. :func:`minimum_parser_version` computes it for the fields a segmenter's metadata
can contain (from the "Added in" notes of ``metadata_schema.fbs``) and is supplied under
that name when, and only when, the native module is missing.
"""

from __future__ import annotations

import gc
import sys
import types

__all__ = ["MetadataUnavailable", "add_segmenter_metadata", "minimum_parser_version", "read_metadata_json"]

BINARY_LABELS = ("background", "person")


class MetadataUnavailable(ValueError):
    """MediaPipe's metadata writer is not installed."""


def minimum_parser_version(metadata_buf: bytes) -> str:
    """The oldest metadata parser that understands ``metadata_buf`` (a ModelMetadata
    flatbuffer), from the versions in which the fields it uses were added."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    md = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(bytearray(metadata_buf), 0))
    version = (1, 0, 0)
    files = list(md.associatedFiles or [])
    for sub in md.subgraphMetadata or []:
        if sub.customMetadata:
            version = max(version, (1, 5, 0))
        if sub.inputTensorGroups or sub.outputTensorGroups:
            version = max(version, (1, 2, 0))
        if sub.inputProcessUnits or sub.outputProcessUnits:
            version = max(version, (1, 1, 0))
        files += list(sub.associatedFiles or [])
        for t in list(sub.inputTensorMetadata or []) + list(sub.outputTensorMetadata or []):
            files += list(t.associatedFiles or [])
            if t.content is not None and t.content.contentPropertiesType == fb.ContentProperties.AudioProperties:
                version = max(version, (1, 3, 0))
            for unit in t.processUnits or []:
                if unit.optionsType in (fb.ProcessUnitOptions.BertTokenizerOptions,
                                        fb.ProcessUnitOptions.SentencePieceTokenizerOptions):
                    version = max(version, (1, 1, 0))
                elif unit.optionsType == fb.ProcessUnitOptions.RegexTokenizerOptions:
                    version = max(version, (1, 2, 1))
    for f in files:
        if f.version:
            version = max(version, (1, 4, 1))
        if f.type == fb.AssociatedFileType.SCANN_INDEX_FILE:
            version = max(version, (1, 4, 0))
        elif f.type == fb.AssociatedFileType.VOCABULARY:
            version = max(version, (1, 0, 1))
    return ".".join(map(str, version))


def _writer():
    try:
        import mediapipe.tasks.metadata.metadata_schema_py_generated  # noqa: F401
    except ImportError as e:
        raise MetadataUnavailable(
            "--metadata needs MediaPipe's metadata writer: pip install --no-deps mediapipe==1.2.2 "
            f"({e})") from e
    native = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"
    try:
        __import__(native)
    except ImportError:
        shim = types.ModuleType(native)
        shim.GetMinimumMetadataParserVersion = minimum_parser_version
        for parent in ("mediapipe.tasks.cc", "mediapipe.tasks.cc.metadata", "mediapipe.tasks.cc.metadata.python"):
            sys.modules.setdefault(parent, types.ModuleType(parent))
        sys.modules[native] = shim
        sys.modules["mediapipe.tasks.cc.metadata.python"]._pywrap_metadata_version = shim
    from mediapipe.tasks.python.metadata.metadata_writers import (
        image_segmenter,
        metadata_writer,
    )

    return image_segmenter, metadata_writer


def add_segmenter_metadata(tflite: bytes, labels=BINARY_LABELS, mean=(0.0,), std=(1.0,),
                           activation: str = "none") -> tuple[bytes, str]:
    """Return ``tflite`` with image-segmenter metadata, and the metadata as JSON.

    ``mean``/``std``: the input normalization a client applies, ``(pixel - mean) / std``
    (our models normalize inside, so float inputs take pixels as they are: 0 and 1).
    ``labels``: one name per output channel. ``activation``: what the client should
    apply to the output (``none`` for probability heads, ``softmax``/``sigmoid`` for logits).
    """
    image_segmenter, metadata_writer = _writer()
    act = {"none": image_segmenter.Activation.NONE, "sigmoid": image_segmenter.Activation.SIGMOID,
           "softmax": image_segmenter.Activation.SOFTMAX}[activation]
    writer = image_segmenter.MetadataWriter.create(
        bytearray(tflite), input_norm_mean=list(mean), input_norm_std=list(std),
        labels=metadata_writer.Labels().add(list(labels)), activation=act)
    model, json_text = writer.populate()
    del writer  # its temporary folder is removed now, not at interpreter exit (noisy there)
    gc.collect()
    return bytes(model), json_text


def read_metadata_json(tflite: bytes) -> str | None:
    """The metadata of ``tflite`` as JSON, or None if it has none."""
    _writer()
    from mediapipe.tasks.python.metadata import metadata

    try:
        return metadata.MetadataDisplayer.with_model_buffer(bytearray(tflite)).get_metadata_json()
    except ValueError:
        return None
