"""Optional integrations of sark_native with third-party libraries (import each explicitly)."""
