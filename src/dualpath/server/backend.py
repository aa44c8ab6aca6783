"""Re-export of the backend interface (defined in `dualpath.core.backend`)."""

from dualpath.core.backend import AdmissionLimits, Backend, BackendMetrics, Readiness

__all__ = ["AdmissionLimits", "Backend", "BackendMetrics", "Readiness"]
