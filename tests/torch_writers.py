"""Reference writers the tests inject into the converter in place of its torch-free ones.

``PthWriter`` writes through ``torch.save`` itself, so a file the converter writes without torch
can be compared with one torch wrote for the same tensors.
"""

from ropekit.conversion.formats.dtypes import torch_dtype
from ropekit.conversion.formats.fixed_writer import FixedLayoutWriter


def torch_pth_writer(path, entries, align=None):
    """The converter's ``.pth`` writer (``Writers(pth=...)``), answered with the torch.save
    reference writer (which places payloads where torch.save does: ``align`` does not apply)."""
    return PthWriter(path, entries)


class PthWriter(FixedLayoutWriter):
    """Writes a ``torch.save``-format file tensor by tensor, like ``SafetensorsWriter``.

    ``torch.save`` needs every tensor in memory at once.  Instead we save placeholders under
    ``torch.serialization.skip_data`` (the zip layout is written, the data space only reserved;
    ``torch.empty`` placeholders are never touched, so they cost no resident memory), ask
    ``torch.load(map_location="meta")`` where each storage landed, and fill the bytes in place.
    The zip CRC fields stay unset, as with ``torch.serialization.set_crc32_options(False)``;
    ``torch.load`` does not check them.

    The converter writes ``.pth`` files with ``pth_writer.PthZipWriter``, which needs no torch;
    this writer is the reference it is tested against (tests inject it as the converter's .pth writer).
    """

    def __init__(self, path, entries):
        import torch

        # dtypes: torch.dtype or safetensors names (the converter plans with names)
        placeholders = {name: torch.empty(shape, dtype=torch_dtype(dtype)) for name, dtype, shape in entries}
        with torch.serialization.skip_data():
            torch.save(placeholders, path)
        del placeholders
        layout = torch.load(path, map_location="meta", weights_only=True)
        offsets = {
            name: t.untyped_storage()._checkpoint_offset + t.storage_offset() * t.element_size()
            for name, t in layout.items()
        }
        sizes = {name: t.numel() * t.element_size() for name, t in layout.items()}
        self.open_output(path, offsets, sizes, "r+b")
