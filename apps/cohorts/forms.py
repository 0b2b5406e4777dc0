import base64
import binascii

from django import forms

from apps.cohorts.models import QcStatus, Timepoint, Volume
from apps.cohorts.services.labels import MAX_LABELS_BYTES


class BidsUploadForm(forms.Form):
    archive = forms.FileField(help_text="A .zip of the BIDS dataset (dataset_description.json at its root)")
    site = forms.ModelChoiceField(queryset=None, required=False, to_field_name="name",
                                  help_text="Needed when participants.tsv has no 'site' column")
    cohort = forms.SlugField(required=False, help_text="Add the imported exams to this cohort")

    def __init__(self, *args, sites=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["site"].queryset = sites

    def clean_archive(self):
        archive = self.cleaned_data["archive"]
        if not archive.name.lower().endswith(".zip"):
            raise forms.ValidationError("Upload a .zip archive of the dataset.")
        return archive


class DicomUploadForm(forms.Form):
    archive = forms.FileField(help_text="A .zip of the study's PET and MR DICOM files")
    site = forms.ModelChoiceField(queryset=None, to_field_name="name")
    patient = forms.SlugField(max_length=64, help_text="Pseudonymous code, never a name")
    exam = forms.SlugField(max_length=64)
    timepoint = forms.ChoiceField(choices=Timepoint.choices)
    day = forms.IntegerField(min_value=0, initial=0)

    def __init__(self, *args, sites=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["site"].queryset = sites

    clean_archive = BidsUploadForm.clean_archive


class LabelsUploadForm(forms.Form):
    """A labels TSV for one site: first a preview (dry run), then the same content confirmed.

    The confirmation carries the file's content back (base64, hidden), so nothing is kept on the
    server between the two steps; the content is checked again in full when it is applied.
    """

    file = forms.FileField(required=False, help_text="TSV with participant_id, session_id and label columns "
                                                     "(hospital spellings such as yes/no, wt/mut, PD/TRC are read)")
    site = forms.ModelChoiceField(queryset=None, to_field_name="name", help_text="Site of the participants")
    content = forms.CharField(required=False, widget=forms.HiddenInput)
    source_name = forms.CharField(required=False, max_length=255, widget=forms.HiddenInput)
    confirm = forms.BooleanField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args, sites=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["site"].queryset = sites

    def clean(self):
        data = super().clean()
        upload = data.get("file")
        if upload is not None:
            if upload.size > MAX_LABELS_BYTES:
                raise forms.ValidationError(f"A labels file is at most {MAX_LABELS_BYTES // 1024 // 1024} MB.")
            data["raw"] = upload.read()
            data["source_name"] = upload.name
            data["confirm"] = False  # a new file is always previewed first
        elif data.get("content"):
            try:
                data["raw"] = base64.b64decode(data["content"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise forms.ValidationError("The confirmed content is damaged; upload the file again.") from exc
            data["source_name"] = data.get("source_name") or "labels.tsv"
        else:
            raise forms.ValidationError("Choose a labels file (TSV).")
        return data


class QcForm(forms.ModelForm):
    class Meta:
        model = Volume
        fields = ["qc_status", "qc_note"]
        widgets = {"qc_status": forms.Select(choices=QcStatus.choices)}
