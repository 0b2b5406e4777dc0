from django import forms

from apps.cohorts.models import QcStatus, Timepoint, Volume


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


class QcForm(forms.ModelForm):
    class Meta:
        model = Volume
        fields = ["qc_status", "qc_note"]
        widgets = {"qc_status": forms.Select(choices=QcStatus.choices)}
