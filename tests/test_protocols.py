"""Protocol splits: validation concepts never train, LOSO excludes the held-out subject, the test stays sealed."""
import numpy as np
import pytest

from bench.protocols import IntraSubject, LeaveOneSubjectOut, ProtocolError, choose_val_concepts
from fakes import InMemoryThingsEEG


def test_intra_split_holds_out_whole_concepts():
    ds = InMemoryThingsEEG(n_concepts=20, per_concept=3)
    split = IntraSubject(val_concepts=4, val_seed=0).split(ds, 2)
    val_concepts = set(split.val.concept.tolist())
    assert len(val_concepts) == 4
    assert not val_concepts & set(split.train.row_concept.tolist())  # no validation concept in training
    assert len(split.train) == (20 - 4) * 3 and len(split.val) == 4 * 3
    assert set(split.train.row_subject.tolist()) == {1}  # subject 2 is index 1
    assert sorted(np.bincount(split.val.fold).tolist()) == [4, 4, 4]  # one 4-way fold per image slot
    assert split.info["val_concepts"] == [ds.train_concepts[i] for i in sorted(val_concepts)]
    assert ("test_eeg", 2) not in ds.reads and ("test_features",) not in ds.reads  # sealed


def test_val_concepts_fixed_across_runs_and_capped():
    a, _ = choose_val_concepts(100, 10, seed=0)
    b, _ = choose_val_concepts(100, 10, seed=0)
    assert np.array_equal(a, b) and not np.array_equal(a, choose_val_concepts(100, 10, seed=1)[0])
    capped, note = choose_val_concepts(20, 100, seed=0)
    assert len(capped) == 4 and note["val_concepts_requested"] == 100
    with pytest.raises(ProtocolError, match=">= 1"):
        choose_val_concepts(20, 0, seed=0)


def test_single_trials_keep_every_repetition():
    ds = InMemoryThingsEEG(n_concepts=10, per_concept=2, reps=4)
    split = IntraSubject(val_concepts=2, train_average=False).split(ds, 1)
    assert len(split.train) == 8 * 2 * 4 and split.train.eeg.dtype == np.float16
    assert np.array_equal(split.train.row_image[:4], [split.train.row_image[0]] * 4)
    assert split.val.eeg.shape[0] == 2 * 2  # validation stays averaged, like the test


def test_loso_excludes_the_held_out_subject_and_hides_its_identity():
    ds = InMemoryThingsEEG(n_subjects=3)
    split = LeaveOneSubjectOut(val_concepts=4).split(ds, 2)
    assert split.info["train_subjects"] == [1, 3]
    assert set(split.train.row_subject.tolist()) == {0, 2}
    # validation queries are presented as test queries are: without a subject index
    assert split.val.subject is None
    assert ("train_eeg", 2) not in ds.reads  # not even its training partition
    test = split.test.open()
    assert test.subject is None and len(test) == len(ds.test_concepts)
    intra = IntraSubject(val_concepts=4).split(ds, 2)
    assert intra.val.subject.tolist() == [1] * len(intra.val)
    assert intra.test.open().subject.tolist() == [1] * len(ds.test_concepts)


def test_errors():
    ds = InMemoryThingsEEG(n_subjects=1)
    with pytest.raises(ProtocolError, match="subject 5 is not in the dataset"):
        IntraSubject(val_concepts=2).split(ds, 5)
    with pytest.raises(ProtocolError, match="at least 2 subjects"):
        LeaveOneSubjectOut(val_concepts=2).split(ds, 1)


def test_honest_protocols_validate_on_concepts_only_and_published_ones_declare_their_kinds():
    from bench.protocols import PublishedIntraSubject, PublishedLeaveOneSubjectOut

    with pytest.raises(ProtocolError, match="protocol intra validates on concepts, not 'test'"):
        IntraSubject(validation="test")
    assert (IntraSubject.version, LeaveOneSubjectOut.version) == (1, 2)  # unchanged by issue 17
    assert IntraSubject.honest_counterpart is None and PublishedIntraSubject.honest_counterpart == "intra"
    assert "test-other-subjects" not in PublishedIntraSubject.validations
    assert PublishedLeaveOneSubjectOut.honest_counterpart == "inter"
    assert "test-other-subjects" in PublishedLeaveOneSubjectOut.validations
    ds = InMemoryThingsEEG()
    protocol = IntraSubject(val_concepts=4)
    split = protocol.split(ds, 1)
    assert split.info["validation"] == "concepts" and not protocol.test_selected
    assert protocol.selection_validation(ds, 1) is None and ("test_eeg", 1) not in ds.reads
    test = PublishedIntraSubject(validation="test")
    assert test.test_selected and test.split(ds, 1).val is None  # the runner supplies it, opened before the seal
    opened = test.selection_validation(ds, 1)
    assert len(opened) == len(ds.test_concepts) and opened.subject.tolist() == [0] * len(ds.test_concepts)
