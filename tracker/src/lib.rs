//! shoal-tracker.
