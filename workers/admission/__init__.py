"""Admission: the fleet's rate limits and the providers' quotas, fleet-wide, and the
jobs that wait for them parked in Redis rather than in a worker thread."""
