//! shoal-loadtest.
