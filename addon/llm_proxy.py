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
from llm_proxy.cluster.addon import Cluster
from llm_proxy.control.addon import ControlPlane
from llm_proxy.jobs.addon import Jobs
from llm_proxy.retention.addon import BodyRetention
from llm_proxy.scope.addon import Scope
from llm_proxy.websocket.addon import ResponsesWebSocket

metering = LLMProxy()
control = ControlPlane(metering)  # before metering: answers /_llm/ and CORS preflights first
cluster = Cluster(metering)  # puts local or Redis-shared limits into metering's access
jobs = Jobs(metering)  # before metering: queues `Prefer: respond-async` calls, answers /_llm/jobs/
websocket = ResponsesWebSocket(metering)  # before metering: it owns WebSocket upgrades, and its done() comes first
addons = [control, Scope(metering), cluster, jobs, websocket, metering, control.clock,  # the clock after metering times its hooks
          BodyRetention()]
