"""Print-ready output (issue 7): flat strip TIFFs with ICC profile and resolution, bleed,
panels with overlap, manifest, layout picture and proof. `plan_print` works a request out and
refuses bad input before any work; `write_print` streams it to disk."""
from .options import PrintOptions
from .plan import PrintPlan, plan_print
from .write import write_print

__all__ = ["PrintOptions", "PrintPlan", "plan_print", "write_print"]
