"""training.experiments.patient_context: per-field likelihood ratios from training rows, combined by
Bayes' rule."""

from __future__ import annotations

import numpy as np
import pytest

from training.datasets import DatasetLayoutError
from training.experiments.patient_context import PatientContext, combine, fit, read_ham10000_context

LABELS = ("a", "b")


def test_ratios_are_smoothed_counts_of_the_training_rows():
    rows = [("a", PatientContext(sex="male"))] * 3 + [("b", PatientContext(sex="female"))]

    tables = fit(rows, LABELS, smoothing=1.0)

    # counts + 1: male (a 4, b 1), female (a 1, b 2); p(male|a) = 4/5, p(male) = 5/8
    assert tables["sex"]["male"] == pytest.approx(np.log([4 / 5 / (5 / 8), 1 / 3 / (5 / 8)]))
    assert tables["age_bin"] == {} and tables["site"] == {}     # never recorded: no ratio, adds nothing


def test_a_given_field_moves_the_answer_towards_the_classes_it_goes_with_and_none_changes_nothing():
    rows = ([("a", PatientContext(age_bin=1, site="back"))] * 8 + [("b", PatientContext(age_bin=7, site="face"))] * 8)
    tables = fit(rows, LABELS)
    image = np.array([[0.5, 0.5], [0.5, 0.5]])

    combined = combine(image, [PatientContext(site="face"), PatientContext()], tables)

    assert combined[0, 1] > 0.8                      # the face goes with b
    assert combined[1] == pytest.approx([0.5, 0.5])  # nothing given: the image's answer
    assert combined.sum(axis=1) == pytest.approx([1.0, 1.0])


def test_ham10000_metadata_gives_age_decade_sex_and_site_with_unknown_as_not_given(tmp_path):
    (tmp_path / "HAM10000_metadata.csv").write_text(
        "lesion_id,image_id,dx,dx_type,age,sex,localization\n"
        "HAM_1,ISIC_1,nv,histo,35.0,male,back\n"
        "HAM_2,ISIC_2,bkl,histo,,unknown,unknown\n"
        "HAM_3,ISIC_3,bcc,histo,85.0,female,face\n")

    contexts = read_ham10000_context(tmp_path)

    assert contexts == {"ISIC_1": PatientContext(3, "male", "back"), "ISIC_2": PatientContext(),
                        "ISIC_3": PatientContext(8, "female", "face")}

    (tmp_path / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx,dx_type,age,sex,localization\n"
                                                    "HAM_1,ISIC_1,nv,histo,old,male,back\n")
    with pytest.raises(DatasetLayoutError, match=r"HAM10000_metadata.csv:2: age 'old' is not a number"):
        read_ham10000_context(tmp_path)
