"""Built-in synthetic chest radiographs: phantoms with findings, masks, frontal + lateral views and reports.

phantoms.py samples patients, studies and findings and writes them; render.py draws anatomy and findings;
reports.py writes the radiology reports; builtin.py is THE default data source of every command run without --data.
"""

from medssl.synthetic.phantoms import (MARKER, VIEWS, SyntheticSet, SyntheticStudy, generate, render_study,
                                       sample_patient, study_details, write_synthetic)
from medssl.synthetic.reports import FINDINGS, NO_FINDING, make_report

__all__ = ["FINDINGS", "MARKER", "NO_FINDING", "VIEWS", "SyntheticSet", "SyntheticStudy", "generate", "make_report",
           "render_study", "sample_patient", "study_details", "write_synthetic"]
