"""Instance representations on arrays: the encoded instance label, boxes of masks, masks pasted
into maps, and the border-core representation. No files and no networks here (see
``medseg.io.instances`` and ``medseg.architectures.detection``)."""

from .bordercore import bordercore_spec, from_bordercore, to_bordercore
from .boxes import boxes_from_instances, masks_in_boxes, paste_masks
from .encoding import class_map, components, decode, encode

__all__ = [
    "bordercore_spec",
    "boxes_from_instances",
    "class_map",
    "components",
    "decode",
    "encode",
    "from_bordercore",
    "masks_in_boxes",
    "paste_masks",
    "to_bordercore",
]
