"""`ray job submit` entrypoints: parse arguments, connect to Ray, call one library function."""
