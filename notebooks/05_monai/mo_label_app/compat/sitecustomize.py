"""Compatibility alias loaded (only) in the MONAI Label server's processes.

monailabel 0.8.5 imports `pydicom_seg` when its server starts; pydicom-seg 0.4.1 (its newest release) imports
`pydicom._storage_sopclass_uids`, a module pydicom 3 removed (the same UIDs live in `pydicom.uid`). This
registers that old module name as an alias of the `*Storage` UIDs in `pydicom.uid`, nothing else.
"""
import sys
import types

try:
    import pydicom._storage_sopclass_uids  # noqa: F401  (pydicom < 3 has it)
except ImportError:
    try:
        import pydicom.uid as _uid
        _m = types.ModuleType("pydicom._storage_sopclass_uids")
        _m.__dict__.update({k: v for k, v in vars(_uid).items() if k.endswith("Storage")})
        sys.modules["pydicom._storage_sopclass_uids"] = _m
    except ImportError:
        pass
