"""Jobs: the queue and its worker thread (manager), one job (job), one subscriber's events
(subscription). Knows nothing of torch or HTTP."""

from .job import Job, check_limits, result_events
from .manager import PRIORITIES, JobManager
from .subscription import FINAL_EVENTS, PreviewFrame, Subscription

__all__ = ["Job", "JobManager", "PreviewFrame", "Subscription", "PRIORITIES", "FINAL_EVENTS", "check_limits",
           "result_events"]
