//! shoal-it.
