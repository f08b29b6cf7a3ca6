"""Silent corruption for the tests: flip bytes inside one stored HDF5 chunk, as a bad disk or copy would."""
import h5py


def flip_chunk_bytes(path, dataset, row, n=8):
    """XOR ``n`` bytes in the middle of the stored chunk that holds ``row`` of ``dataset``."""
    with h5py.File(path, "r", locking=False) as f:  # as ShardReader opens it (a second handle must match)
        info = f[dataset].id.get_chunk_info_by_coord((row,) + (0,) * (f[dataset].ndim - 1))
    with open(path, "r+b") as fh:
        at = info.byte_offset + info.size // 2
        fh.seek(at)
        b = bytearray(fh.read(n))
        fh.seek(at)
        fh.write(bytes(x ^ 0x5A for x in b))
