"""`nfguard bench`: the XDP program, the ESL path and the sync path, each
against a baseline measured in the same run."""
