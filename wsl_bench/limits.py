"""Every size bound wsl-bench puts on what it reads, in one place, each with the reason for its number.

A few hundred bytes can ask for gigabytes: a pickle whose list refers to itself through shared
references, a zip entry that inflates a thousandfold, a PNG header declaring 169 megapixels, a
record line whose histogram decompresses to 2 GiB. Each input below is checked against its bound
*before* the memory is allocated, and refused with one line naming the file, the bound (by the
name of its constant here) and its value, so that a user with a legitimately larger input knows
exactly which number stands in the way.

The bounds are far above anything the datasets and methods wsl-bench supports produce; the reason
for each is in its docstring.
"""

from __future__ import annotations

MAX_IMAGE_PIXELS = 40_000_000
"""Largest image, in pixels, that is decoded from a file (PNG, TIFF, DICOM) or that a run works at
(``--image-size``, ``data synth --size``) or that a method's map may have.

Full-field mammography detectors are at most about 29 Mpx (4800×6000 at 50 µm); the published
GLAM and GMIC work at 2944×1920 (5.7 Mpx). 40 Mpx leaves room for any of them while a decoded
16-bit image stays under 80 MB (160 MB as float32): a 386 KB PNG declaring 169 Mpx is refused from
its header instead of being decoded with 4 GB."""

MAX_INDEX_ROWS = 50_000
"""Most data rows an index file (``labels.csv``, a raw dataset's annotation CSV) may hold.

VinDr-Mammo, the largest dataset wsl-bench reads, has 20 486 finding rows for 20 000 images; a row
costs about 3 KB once parsed and each split opens its index, so 50 000 rows keep an index well
under 200 MB where 100 000 rows used to take 3.2 GB."""

MAX_INDEX_BYTES = 256 * 2**20
"""Largest index file (CSV, exam list pickle or JSON), in bytes, read whole into memory.

The published NYU exam lists are kilobytes and VinDr's largest CSV 3 MB; 256 MB is a hundred times
that and a bounded read."""

MAX_PICKLE_EXPANSION = 8
"""How many times its own size in bytes a pickle's data may expand to, counted as containers and
scalars (strings and bytes by their length) with a shared object counted each time it is reached.

A pickle without shared references holds at least one byte per object and per character, so it
expands to less than its size; sharing (the memo) lets ``x = [x, x]`` nested 45 deep stand for
2**46 objects in 591 bytes, which any code walking the list (a ``repr`` in an error message, a
JSON copy) then expands. 8× plus :data:`MIN_PICKLE_EXPANSION` leaves room for the shared view and
dict-key names of a real exam list."""

MIN_PICKLE_EXPANSION = 4_000_000
"""The expanded size (see :data:`MAX_PICKLE_EXPANSION`) every pickle may reach whatever its size:
an exam list of 4 million names and numbers walks in well under 1 GB."""

MAX_WEIGHTS_EXPANSION = 8
"""How many times its file size a weights file's entries may decompress to (plus
:data:`MIN_WEIGHTS_EXPANSION`).

``torch.save`` stores tensors uncompressed and the reference ``.npz`` files (float16 weights,
near-random bits) compress by under 10 %, so real weights expand to about their file size; a
6 MB file whose storage entry inflates to 6 GiB is refused from its zip directory, before
``torch.load`` allocates the storage."""

MIN_WEIGHTS_EXPANSION = 64 * 2**20
"""Bytes every weights file may expand to whatever its size (small files, zip headers)."""

MAX_RECORD_LINE_BYTES = 4 * 2**20
"""Longest line of a ``records.jsonl`` file, in bytes.

A record is under 10 KB (two classes' 1000-bin histograms compressed); 4 MB leaves room for 400
times the bins, and a longer line is skipped (with a warning naming the file and line) without
being read whole."""

MAX_RECORD_HISTOGRAM_BINS = 1_000_000
"""Most histogram bins a record's compressed ``hist`` field may decompress to (4 MB of counts).

Runs use 1000 bins; zlib can inflate a 2 MB field a thousandfold, so decompression stops at this
many counts and the record is refused."""


def describe_bound(name: str, value: int, unit: str = "") -> str:
    """``"the limit wsl_bench.limits.NAME = VALUE UNIT"``: how an error names the bound it hit."""
    return f"the limit wsl_bench.limits.{name} = {value:,}{' ' + unit if unit else ''}"
