"""The distributor: stores every finished or dropped task durably and serves the records."""
