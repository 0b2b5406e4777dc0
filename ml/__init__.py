"""AminoPET machine-learning library.

Plain Python (numpy, scipy, nibabel, torch, scikit-learn): no Django import anywhere below this
package, so every function runs in a notebook and is tested without a database. The Django apps
call into it from services and Celery tasks.
"""
