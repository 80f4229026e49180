"""The script mitmproxy loads: `mitmdump -s addon/llm_proxy.py`.

It only builds the addon; the code lives in the llm_proxy package beside it.
"""

import sys
from pathlib import Path

try:
    import llm_proxy  # noqa: F401  (installed with pip install -e .)
except ImportError:  # run from a plain checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_proxy.addon import LLMProxy
from llm_proxy.control.addon import ControlPlane
from llm_proxy.retention.addon import BodyRetention

metering = LLMProxy()
control = ControlPlane(metering)  # before metering: answers /_llm/ and CORS preflights first
addons = [control, metering, control.clock, BodyRetention()]  # the clock after metering times its hooks
