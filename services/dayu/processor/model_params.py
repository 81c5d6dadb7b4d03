"""The `model` kind's parameters: a stage on a model of your own, described in YAML, no code.

    processors:
      vehicle_detector:                 # the processor's name: nodes host it, pipeline stages name it
        kind: model
        params:
          model: object_detection       # a model of the Triton repository, and its version (0: latest)
          version: 1
          input: {width: 512, height: 512, resize: stretch, colour: RGB, scale: 1, layout: NHWC}
          decode: {type: centernet, heatmap: heatmap, size: size, offset: offset, labels: coco,
                   keep: [car, bus, truck, motorcycle, person], score_threshold: 0.3}

The input says how a frame (or, for a stage with a parent, each of the parent's boxes) becomes the
model's input tensor; the decoder, chosen by `type` from a catalogue of the common model families,
says how its outputs become boxes and labels. Everything is checked when the file is read (errors
name the field) and against the model's real tensors when the processor starts. Pydantic only: see
dayu.processor.model_stage for the code that runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import pydantic

from dayu.processor.backend_params import InferenceParams
from dayu.runtime.config import StrictModel

# The 80 classes of COCO in the order detectors trained on it number them (0-based).
COCO_LABELS = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag "
    "tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard "
    "cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear hair_drier toothbrush"
).split()
LABEL_SETS = {"coco": COCO_LABELS}

Unit = Annotated[float, pydantic.Field(ge=0, le=1)]


class InputSpec(StrictModel):
    """How an image becomes the model's input: resized to width x height, its channels in `colour`
    order, each value (pixel * scale - mean) / std, laid out as `layout` with the batch axis first."""

    name: str = pydantic.Field("", description="the input tensor's name; empty: the model's only input")
    width: int = pydantic.Field(ge=1, le=8192, description="width the model takes, in pixels")
    height: int = pydantic.Field(ge=1, le=8192, description="height the model takes, in pixels")
    resize: Literal["stretch", "letterbox"] = pydantic.Field(
        "letterbox", description="stretch: to width x height; letterbox: keep the aspect ratio and pad"
    )
    pad: int = pydantic.Field(114, ge=0, le=255, description="letterbox: the value of the padding pixels")
    align: Literal["centre", "top_left"] = pydantic.Field(
        "centre", description="letterbox: the image in the middle, or in the top left corner (padding right and below)"
    )
    interpolation: Literal["linear", "area"] = pydantic.Field(
        "linear", description="linear: bilinear; area: the mean of the pixels a sample covers (for large shrinks)"
    )
    half_pixel: bool = pydantic.Field(
        True,
        description="linear: sample at pixel centres (OpenCV's resize, PIL); false: at pixel corners, as "
        "TensorFlow's legacy resize and MediaPipe do (match what the model was trained with)",
    )
    colour: Literal["RGB", "BGR"] = pydantic.Field("RGB", description="channel order the model was trained on")
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["FP32", "UINT8"] = pydantic.Field("FP32", description="UINT8: raw pixels, no scale or mean")
    scale: float = pydantic.Field(1 / 255, gt=0, description="each pixel (0..255) is multiplied by this first")
    mean: tuple[float, float, float] = pydantic.Field(
        (0.0, 0.0, 0.0), description="then this is subtracted, per channel"
    )
    std: tuple[float, float, float] = pydantic.Field((1.0, 1.0, 1.0), description="then divided by this, per channel")

    @pydantic.field_validator("std")
    @classmethod
    def _no_zero(cls, std: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(value <= 0 for value in std):
            raise ValueError(f"every std must be above 0, got {list(std)}")
        return std


class CropSpec(StrictModel):
    """For a stage with a parent: how much of the frame around each parent box the model sees."""

    margin: float = pydantic.Field(0.0, ge=0, le=2, description="grow each box by this share of its size on each side")
    square: bool = pydantic.Field(False, description="widen the shorter side first, so the crop is square")
    shift_y: float = pydantic.Field(
        0.0, ge=-1, le=1, description="move the crop by this share of the box's height (negative: up)"
    )


class _Decoder(StrictModel):
    labels: list[str] | Literal["coco"] = pydantic.Field(
        "coco", description="class names by index, or the name of a known set (coco)"
    )
    keep: list[str] = pydantic.Field(default_factory=list, description="only these labels; empty: every label")
    score_threshold: Unit = pydantic.Field(0.3, description="lowest score kept")

    @property
    def label_names(self) -> tuple[str, ...]:
        return LABEL_SETS[self.labels] if isinstance(self.labels, str) else tuple(self.labels)

    @pydantic.model_validator(mode="after")
    def _keep_known(self) -> _Decoder:
        unknown = sorted(set(self.keep) - set(self.label_names))
        if unknown:
            raise ValueError(f"keep names labels {unknown} that are not among the labels")
        if not self.label_names:
            raise ValueError("labels: at least one")
        return self


class _BoxDecoder(_Decoder):
    iou_threshold: Unit = pydantic.Field(
        0.5, description="non-maximum suppression: boxes of one label overlapping more go"
    )
    max_detections: int = pydantic.Field(100, ge=1, le=1024, description="most boxes kept per image")
    agnostic_nms: bool = pydantic.Field(False, description="suppress overlapping boxes whatever their labels")


class YoloDecoder(_BoxDecoder):
    """YOLO family: one output of candidate boxes, centre x, centre y, width, height in input pixels,
    then (yolov5 style) an objectness, then one score per class."""

    type: Literal["yolo"]
    output: str = pydantic.Field("", description="the output tensor; empty: the model's only output")
    format: Literal["yolov8", "yolov5"] = pydantic.Field(
        "yolov8", description="yolov8: [batch, 4 + classes, boxes], no objectness; yolov5: [batch, boxes, 5 + classes]"
    )


class SsdAnchors(StrictModel):
    """Anchors of one fixed size on a grid per stride, as MediaPipe's SsdAnchorsCalculator makes them with
    fixed_anchor_size (BlazeFace); for other anchor sets give `file` instead."""

    strides: list[int] = pydantic.Field(default_factory=list, description="grid strides, in input pixels")
    per_cell: list[int] = pydantic.Field(default_factory=list, description="anchors per grid cell, one per stride")
    offset: Unit = pydantic.Field(0.5, description="anchor centre within its cell")
    file: Path | None = pydantic.Field(
        None, description="a .npy of [boxes, 4] anchors (centre x, centre y, width, height; 0..1 of the input)"
    )

    @pydantic.model_validator(mode="after")
    def _one_way(self) -> SsdAnchors:
        if self.file is None and (not self.strides or len(self.strides) != len(self.per_cell)):
            raise ValueError("give strides and per_cell of the same length, or a file of anchors")
        if self.file is not None and self.strides:
            raise ValueError("give strides and per_cell, or a file of anchors, not both")
        if any(stride < 1 for stride in self.strides) or any(count < 1 for count in self.per_cell):
            raise ValueError("strides and per_cell must be at least 1")
        return self


class SsdDecoder(_BoxDecoder):
    """SSD family: box offsets from anchors and one score per anchor and class, as two outputs."""

    type: Literal["ssd"]
    boxes: str = pydantic.Field(description="the output of box offsets, [batch, anchors, 4 or more]")
    scores: str = pydantic.Field(description="the output of scores, [batch, anchors, classes]")
    anchors: SsdAnchors
    order: Literal["xywh", "yxhw"] = pydantic.Field("xywh", description="order of centre and size in each offset")
    box_scale: tuple[float, float, float, float] = pydantic.Field(
        (128.0, 128.0, 128.0, 128.0), description="the offsets are divided by these (x, y, w, h) into anchor units"
    )
    size: Literal["linear", "exp"] = pydantic.Field(
        "linear", description="linear: size = offset x anchor size (BlazeFace); exp: exp(offset) x anchor size"
    )
    activation: Literal["sigmoid", "softmax", "none"] = pydantic.Field("sigmoid", description="turns scores into 0..1")
    background: bool = pydantic.Field(False, description="class 0 of the scores is background (dropped)")


class CenterNetDecoder(_BoxDecoder):
    """CenterNet family: a heatmap of class scores per cell (its peaks are object centres, at stride x the
    cell) and, at each cell, the box: its width and height (plus, optionally, the centre's offset in the
    cell) or its distances to the box's left, top, right and bottom sides."""

    type: Literal["centernet"]
    heatmap: str = pydantic.Field(description="the output of class scores per cell, [batch, H, W, classes] in NHWC")
    box: str = pydantic.Field(description="the output of the box at each cell: 2 values (wh) or 4 (ltrb)")
    box_format: Literal["wh", "ltrb"] = pydantic.Field(
        "wh", description="wh: width and height; ltrb: distances from the centre to the left, top, right, bottom"
    )
    offset: str = pydantic.Field("", description="wh: the output of the centre's x, y offset in its cell; empty: none")
    layout: Literal["NHWC", "NCHW"] = pydantic.Field("NHWC", description="layout of the outputs")
    stride: int = pydantic.Field(4, ge=1, le=64, description="input pixels per cell")
    box_unit: Literal["cells", "pixels"] = pydantic.Field("cells", description="unit of the box output")
    activation: Literal["sigmoid", "none"] = pydantic.Field("none", description="none: the heatmap is 0..1 already")
    peaks: int = pydantic.Field(100, ge=1, le=1024, description="how many of the highest peaks to decode")

    @pydantic.model_validator(mode="after")
    def _offset_with_wh(self) -> CenterNetDecoder:
        if self.offset and self.box_format != "wh":
            raise ValueError("offset goes with box_format wh; ltrb boxes need none")
        return self


class BoxesDecoder(_BoxDecoder):
    """Models that decode in the graph (TF object detection API, exported NMS): one output with a row
    per box, the columns named by `columns`."""

    type: Literal["boxes"]
    output: str = pydantic.Field("", description="the output tensor; empty: the model's only output")
    columns: list[Literal["x1", "y1", "x2", "y2", "score", "class", "skip"]] = pydantic.Field(
        description="what each column of a row is"
    )
    coordinates: Literal["pixels", "normalized"] = pydantic.Field(
        "pixels", description="pixels of the input, or 0..1 of its width and height"
    )

    @pydantic.field_validator("columns")
    @classmethod
    def _every_column(cls, columns: list[str]) -> list[str]:
        needed = {"x1", "y1", "x2", "y2", "score", "class"}
        missing = sorted(needed - set(columns))
        if missing or len([c for c in columns if c != "skip"]) != len(needed):
            raise ValueError(f"each of {sorted(needed)} exactly once (and skip for others); missing {missing}")
        return columns


class ClassifyDecoder(_Decoder):
    """Classification of a whole image (a frame, or each parent box): one output of a score per class.
    The label is the best class; with top_k above 1 the text lists the best k with their scores; with
    expected_value the labels are numbers (an age per bin) and the text is their mean, weighted by score."""

    type: Literal["classify"]
    output: str = pydantic.Field("", description="the output tensor; empty: the model's only output")
    activation: Literal["softmax", "sigmoid", "none"] = pydantic.Field("none", description="turns scores into 0..1")
    top_k: int = pydantic.Field(1, ge=1, le=20)
    expected_value: bool = pydantic.Field(False, description="labels are numbers: report their weighted mean as text")
    score_threshold: Unit = pydantic.Field(0.0, description="below this the box is labelled 'unknown'")

    @pydantic.model_validator(mode="after")
    def _numbers(self) -> ClassifyDecoder:
        if self.expected_value:
            try:
                [float(label) for label in self.label_names]
            except ValueError:
                raise ValueError("expected_value needs labels that are numbers") from None
        return self


Decoder = Annotated[
    YoloDecoder | SsdDecoder | CenterNetDecoder | BoxesDecoder | ClassifyDecoder, pydantic.Field(discriminator="type")
]


class ModelStageParams(InferenceParams):
    model: str = pydantic.Field(min_length=1, description="the model's name in the Triton repository")
    version: int = pydantic.Field(0, ge=0, description="its version; 0: the latest (a pipeline stage may name another)")
    input: InputSpec
    decode: Decoder
    crop: CropSpec = CropSpec()
    batch_size: int = pydantic.Field(8, ge=1, le=64, description="images per model call")
    label_prefix: str = pydantic.Field("", description="put before every label, as in 'gender:' or 'age:'")
