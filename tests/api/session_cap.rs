//! Issue 18 regression tests: session_cap.
