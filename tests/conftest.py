import os
import warnings

import pytest

# Lightning's advice to add workers is noise for in-memory tensors on 2 CPU cores.
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture(autouse=True)
def _quiet_lightning(caplog):
    caplog.set_level("WARNING", logger="pytorch_lightning")
    yield
