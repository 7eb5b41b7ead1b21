//! netrx-tests: harness for end-to-end and hardware-in-loop tests.
