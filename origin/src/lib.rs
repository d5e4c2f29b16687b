//! shoal-origin.
