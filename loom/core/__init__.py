"""loom-core's import paths (`loom.core.context`, `loom.core.workflow`), kept as re-exports.

Code written for loom-core imports from here unchanged; new code writes `loom.WorkflowContext`.
"""
