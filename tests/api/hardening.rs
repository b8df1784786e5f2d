//! Issue 18 regression tests: hardening.
