//! Calibration against measured local-mode runs.
