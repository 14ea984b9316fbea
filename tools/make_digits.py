"""Regenerates python/gencore/data/digits.npz, the data of ``gencore demo``.

The file is scikit-learn's copy of the UCI optdigits test set (1797 images of
8x8 integer pixels in 0..16, labels 0..9), stored so that the demo needs only
numpy at run time. Needs scikit-learn (``pip install scikit-learn``):

    python tools/make_digits.py            # writes python/gencore/data/digits.npz
    python tools/make_digits.py --check    # exit 1 if the shipped arrays differ

The zip members get a fixed time stamp, so with the same zlib the same data
give the same bytes (the sha256 in python/gencore/data/README.md); --check
compares the arrays, not the bytes, since another zlib may compress differently.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "python" / "gencore" / "data" / "digits.npz"


def digits_arrays() -> dict[str, np.ndarray]:
    """{"pixels": uint8 [1797, 64] in 0..16, "labels": uint8 [1797] in 0..9}, scikit-learn's order."""
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels, labels = d.data.astype(np.uint8), d.target.astype(np.uint8)
    # The casts must be exact: integer pixels in 0..16, labels in 0..9.
    if not (np.array_equal(pixels, d.data) and np.array_equal(labels, d.target)):
        raise SystemExit("scikit-learn's digits are not small integers any more; refusing to round them")
    return {"pixels": pixels, "labels": labels}


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz (what np.load reads) with fixed member time stamps: reproducible bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue(), compresslevel=9)
    return buffer.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the shipped file, write nothing")
    args = parser.parse_args(argv)
    arrays = digits_arrays()
    if args.check:
        with np.load(OUT) as shipped:
            same = set(shipped.files) == set(arrays) and all(
                shipped[k].dtype == v.dtype and np.array_equal(shipped[k], v) for k, v in arrays.items())
        print(f"{OUT}: {'same arrays as' if same else 'DIFFERS from'} scikit-learn's digits "
              f"(sha256 {hashlib.sha256(OUT.read_bytes()).hexdigest()})")
        return 0 if same else 1
    data = npz_bytes(arrays)
    digest = hashlib.sha256(data).hexdigest()
    OUT.write_bytes(data)
    print(f"wrote {OUT} ({len(data)} bytes, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
