"""Load the Thrift IDL of the wire contract into a Python module with thriftpy2.

The IDL lives in the repository's ``thrift/`` directory (not a Python package, because a package
named ``thrift`` would shadow Apache Thrift). ``FMLITE_THRIFT_IDL`` overrides the path.
"""

from __future__ import annotations

import os
from pathlib import Path

import thriftpy2

__all__ = ["IDL_PATH", "fmlite_thrift"]

IDL_PATH = Path(os.environ.get("FMLITE_THRIFT_IDL", Path(__file__).resolve().parents[1] / "thrift" / "fmlite.thrift"))

if not IDL_PATH.exists():
    raise ImportError(f"Thrift IDL not found at {IDL_PATH}; set FMLITE_THRIFT_IDL to the path of fmlite.thrift")

fmlite_thrift = thriftpy2.load(str(IDL_PATH), module_name="fmlite_thrift")
