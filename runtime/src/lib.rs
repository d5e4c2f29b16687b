//! shoal-runtime.
