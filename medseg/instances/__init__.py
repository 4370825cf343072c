"""Instance representations on arrays: the encoded instance label, boxes of masks, masks pasted
into maps, and the border-core representation. No files and no networks here (see
``medseg.io.instances`` and ``medseg.architectures.detection``)."""
