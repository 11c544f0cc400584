"""Small DICOM whole-slide images for the tests: a pyramid written as a VL Whole Slide Microscopy
Image series (one instance per level, TILED_FULL), the way IDC serves slides, with JPEG baseline
frames (as IDC's), uncompressed ones (pixels exactly the source's), JPEG-LS (which OpenSlide 4.0
does not decode), lossless JPEG or lossless JPEG 2000; encapsulated frames with or without a basic
offset table, in one fragment each or several, or behind an extended offset table."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

CMU_CROP = (600, 800, 1280, 1024)  # x, y, width, height of the shared CMU slide made into DICOM series
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
CODECS = {"jpeg": "1.2.840.10008.1.2.4.50", "raw": "1.2.840.10008.1.2.1", "jpegls": "1.2.840.10008.1.2.4.80",
          "jpeg-lossless": "1.2.840.10008.1.2.4.70", "jpeg2k": "1.2.840.10008.1.2.4.90"}
OFFSETS = ("basic", "none", "extended")  # how encapsulated frames are found: the basic offset table, none, the extended


def _code(value: str, scheme: str, meaning: str):
    from pydicom.dataset import Dataset

    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def _frames(level: np.ndarray, tile: int, codec: str, quality: int) -> list[bytes]:
    """The level's tiles in row-major order, encoded (edge tiles padded with white, as scanners do)."""
    import imagecodecs

    h, w = level.shape[:2]
    out = []
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            t = np.full((tile, tile, 3), 255, np.uint8)
            part = level[y : y + tile, x : x + tile]
            t[: part.shape[0], : part.shape[1]] = part
            if codec == "jpeg":
                buf = io.BytesIO()
                Image.fromarray(t).save(buf, format="JPEG", quality=quality, subsampling=0)
                out.append(buf.getvalue())
            elif codec == "jpegls":
                out.append(bytes(imagecodecs.jpegls_encode(t)))
            elif codec == "jpeg-lossless":  # first-order prediction, an Adobe marker saying RGB
                out.append(bytes(imagecodecs.jpeg8_encode(t, lossless=True, predictor=1)))
            elif codec == "jpeg2k":  # reversible, no colour transform
                out.append(bytes(imagecodecs.jpeg2k_encode(t, level=0, codecformat="J2K", mct=False)))
            else:
                out.append(t.tobytes())
    return out


def write_dicom_series(rgb: np.ndarray, folder: Path, mpp: float = 0.5, tile: int = 256, levels: int = 3,
                       container: str = "SLIDE-1", codec: str = "jpeg", quality: int = 95, offsets: str = "basic",
                       fragments: int = 1) -> list[Path]:
    """`rgb` (h, w, 3) as a DICOM WSI series in `folder`: level k is `rgb` reduced 2**k times (box
    filter), each an instance file named by its level; `container` is the slide's label
    (ContainerIdentifier). Encapsulated frames: `offsets` one of OFFSETS, `fragments` per frame
    (the extended table takes one). Returns the files, level 0 first."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate, encapsulate_extended
    from pydicom.uid import generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
    h0, w0 = rgb.shape[:2]
    paths = []
    for k in range(levels):
        level = rgb if k == 0 else np.asarray(Image.fromarray(rgb).reduce(2**k))
        h, w = level.shape[:2]
        frames = _frames(level, tile, codec, quality)
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = WSI_SOP_CLASS, sop
        meta.TransferSyntaxUID = CODECS[codec]
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = WSI_SOP_CLASS, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_ref
        ds.Modality, ds.Manufacturer, ds.PatientID, ds.PatientName = "SM", "histogen tests", "P-1", "Test^Slide"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDateTime = "20260101"
        ds.StudyTime = ds.ContentTime = "000000"
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber, ds.AccessionNumber = "1", 1, k + 1, ""
        ds.ReferringPhysicianName, ds.PatientBirthDate, ds.PatientSex = "", "", ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE" if k == 0 else "RESAMPLED"]
        ds.BurnedInAnnotation, ds.SpecimenLabelInImage = "NO", "NO"
        ds.FocusMethod, ds.ExtendedDepthOfField = "AUTO", "NO"
        ds.VolumetricProperties, ds.LossyImageCompression = "VOLUME", "01" if codec == "jpeg" else "00"
        if codec == "jpeg":
            ds.LossyImageCompressionRatio, ds.LossyImageCompressionMethod = "10", "ISO_10918_1"
        ds.ContainerIdentifier, ds.IssuerOfTheContainerIdentifierSequence = container, []
        ds.ContainerTypeCodeSequence = [_code("433466003", "SCT", "Microscope slide")]
        spec = Dataset()
        spec.SpecimenIdentifier, spec.SpecimenUID = container, generate_uid()
        spec.IssuerOfTheSpecimenIdentifierSequence = []
        spec.SpecimenPreparationSequence = []
        ds.SpecimenDescriptionSequence = [spec]
        ds.AcquisitionContextSequence = []
        ds.DimensionOrganizationType = "TILED_FULL"
        ds.DimensionOrganizationSequence = [Dataset()]
        ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = generate_uid()
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        ds.PhotometricInterpretation = "YBR_FULL_422" if codec == "jpeg" else "RGB"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.Rows = ds.Columns = tile
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows, ds.TotalPixelMatrixFocalPlanes = w, h, 1
        ds.NumberOfFrames, ds.NumberOfOpticalPaths = len(frames), 1
        spacing = mpp * w0 / w / 1000  # mm per pixel at this level
        ds.ImagedVolumeWidth, ds.ImagedVolumeHeight, ds.ImagedVolumeDepth = w0 * mpp / 1000, h0 * mpp / 1000, 0.001
        origin = Dataset()
        origin.XOffsetInSlideCoordinateSystem, origin.YOffsetInSlideCoordinateSystem = 20.0, 40.0
        ds.TotalPixelMatrixOriginSequence = [origin]
        ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
        measures = Dataset()
        measures.PixelSpacing, measures.SliceThickness, measures.SpacingBetweenSlices = [spacing, spacing], 0.001, 0.001
        shared = Dataset()
        shared.PixelMeasuresSequence = [measures]
        path_id = Dataset()
        path_id.OpticalPathIdentifier = "1"
        shared.OpticalPathIdentificationSequence = [path_id]
        ds.SharedFunctionalGroupsSequence = [shared]
        optical = Dataset()
        optical.OpticalPathIdentifier = "1"
        optical.IlluminationColorCodeSequence = [_code("414298005", "SCT", "Full Spectrum")]
        optical.IlluminationTypeCodeSequence = [_code("111744", "DCM", "Brightfield illumination")]
        ds.OpticalPathSequence = [optical]
        if codec == "raw":
            ds.PixelData = b"".join(frames)
        elif offsets == "extended":
            ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(frames)
            ds["PixelData"].is_undefined_length = True
        else:
            ds.PixelData = encapsulate(frames, fragments_per_frame=fragments, has_bot=offsets == "basic")
            ds["PixelData"].is_undefined_length = True
        ds["PixelData"].VR = "OB"
        path = folder / f"level-{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def as_older_converter(paths: list[Path], pixel_spacing: bool = False) -> list[Path]:
    """The instances rewritten as an older converter writes them: no ImageType, no
    DimensionOrganizationType and no functional groups (so no per-frame positions, and no pixel
    spacing unless `pixel_spacing`, then as a top-level PixelSpacing); ImagedVolumeWidth/Height stay."""
    import pydicom

    for path in paths:
        ds = pydicom.dcmread(path)
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        for key in ("ImageType", "DimensionOrganizationType", "DimensionOrganizationSequence",
                    "SharedFunctionalGroupsSequence", "TotalPixelMatrixOriginSequence", "ImageOrientationSlide"):
            if key in ds:
                delattr(ds, key)
        if pixel_spacing:
            ds.PixelSpacing = spacing
        ds.save_as(path)
    return paths

