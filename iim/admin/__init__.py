"""``python -m iim.admin``: the imadmin of iim."""
