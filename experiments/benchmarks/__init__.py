"""Speed measurements, run by hand (never in the test suite); each prints one JSON object on its last line."""
