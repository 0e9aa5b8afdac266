"""One dated revision per schema change: ``<YYYYMMDD>_<nnnn>_<slug>.py``, each with
``upgrade`` and ``downgrade``. Alembic loads them by path; this file makes the folder a
package so the revisions ship with the distribution."""
