"""Browser end-to-end tests of the web UI (headless Chromium via Playwright)."""
