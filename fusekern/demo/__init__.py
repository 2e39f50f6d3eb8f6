"""``fusekern demo``: knowledge fusion end to end on the standard library (see ``run.py``)."""

from fusekern.demo.config import DemoConfig, ModelSpec, preset
from fusekern.demo.run import run_demo

__all__ = ["DemoConfig", "ModelSpec", "preset", "run_demo"]
