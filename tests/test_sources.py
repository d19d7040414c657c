"""Reading a user's image files as the models see them, and writing maps back on each file's own grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, LoadImage, Resized
from PIL import Image

from fake_datasets import write_dicom, write_gray, write_nifti
from scripts.data import SkippingDataset, folder_datalist
from scripts.sources import (
    AsOwnGridd,
    InvertToSourced,
    LoadImageCheckedd,
    RowsColumnsd,
    SaveOnSourceGridd,
    decode_shape,
    find_image_files,
    image_format,
    image_readers,
)
from scripts.transforms import image_transforms, mri_transforms


def _picture(rows=30, cols=44, seed=0):
    """A smooth asymmetric picture (a bright blob upper left, a ramp to the right): flips and transposes show."""
    yy, xx = np.mgrid[:rows, :cols]
    blob = np.exp(-((yy - rows / 4) ** 2 + (xx - cols / 4) ** 2) / 30.0)
    return 40 + 150 * blob + 60 * xx / cols + np.random.RandomState(seed).rand(rows, cols)


def _corr(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def test_find_image_files_by_suffix_and_dicom_marker(tmp_path):
    write_gray(tmp_path / "a.png", _picture())
    write_gray(tmp_path / "a.jpg", _picture())  # same stem, another format: its own entry and name
    write_dicom(tmp_path / "series" / "IM0001", _picture().astype(np.uint16))  # DICOM without a suffix
    write_nifti(tmp_path / "series" / "b.nii.gz", _picture().astype(np.float32))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"")
    write_gray(tmp_path / "out" / "old_x_sens.png", _picture())  # an output folder inside the input folder
    files, ignored, problems = find_image_files(tmp_path, exclude=[tmp_path / "out"])
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a.jpg", "a.png", "series/IM0001",
                                                                   "series/b.nii.gz"]
    assert ignored == 1 and problems == []
    entries = folder_datalist(tmp_path, exclude=[tmp_path / "out"])
    assert [e["name"] for e in entries] == ["a.jpg", "a.png", "series/IM0001", "series/b.nii.gz"]
    assert [image_format(e["image"]) for e in entries] == ["raster", "raster", "dicom", "nifti"]


def test_folder_datalist_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        folder_datalist(tmp_path / "nowhere")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=f"no image file under {tmp_path / 'docs'}"):
        folder_datalist(tmp_path / "docs")


def test_pil_modes_read_as_the_picture_they_show(tmp_path):
    """Palette indices, CMYK, 16-bit and alpha are read as what the file shows: each matches the RGB original."""
    rgb = np.stack([_picture(), _picture()[:, ::-1], _picture()[::-1]], axis=-1).astype(np.uint8)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")  # adaptive palette: indices are not gray levels
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    Image.fromarray(np.dstack([rgb, np.full(luma.shape, 255, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray((luma * 200).astype(np.uint16)).save(tmp_path / "gray16.png")
    Image.fromarray(luma.astype(np.uint8)).convert("LA").save(tmp_path / "gray_alpha.png")
    chain = image_transforms(size=16)
    reference = chain({"image": str(tmp_path / "rgb.png")})["image"][0].numpy()
    for name in ("palette.png", "cmyk.jpg", "rgba.png", "gray16.png", "gray_alpha.png"):
        out = chain({"image": str(tmp_path / name)})["image"][0].numpy()
        assert out.shape == (16, 16) and _corr(out, reference) > 0.97, name
    # what the model sees is the picture as displayed: rows x columns
    loaded = LoadImageCheckedd("image")({"image": str(tmp_path / "rgb.png")})["image"]
    assert tuple(loaded.shape) == (3, 44, 30)  # MONAI's (columns, rows) order, as ITK and the viewers
    shown = RowsColumnsd("image")({"image": loaded})["image"]
    np.testing.assert_array_equal(shown[0].numpy(), rgb[..., 0])


def test_monochrome1_dicom_is_inverted_with_or_without_suffix(tmp_path):
    pixels = (_picture() * 10).astype(np.uint16)
    chain = image_transforms(size=16)
    plain = chain({"image": str(write_dicom(tmp_path / "m2.dcm", pixels))})["image"]
    with_suffix = chain({"image": str(write_dicom(tmp_path / "m1.dcm", pixels, monochrome1=True))})["image"]
    without = chain({"image": str(write_dicom(tmp_path / "IM0002", pixels, monochrome1=True))})["image"]
    torch.testing.assert_close(without, with_suffix)
    torch.testing.assert_close(with_suffix, 1 - plain, atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", ["volume", "multiframe", "nan", "corrupt", "unknown", "nifti_3_frames",
                                  "nifti_4_frames", "strip"])
def test_what_a_2d_model_cannot_take_is_refused_naming_the_file(tmp_path, case):
    if case == "strip":  # 2 x 2400: the MRI chain's longest-side resize to 16 would leave no row
        path = write_gray(tmp_path / "strip.png", (np.random.rand(2, 2400) * 255).astype(np.uint8))
        message = "is 2 x 2400 pixels: resized to 16 along its longest side, its short side would be under one pixel"
    elif case.startswith("nifti_"):  # a slice over time: frames, not colour channels to blend
        frames = int(case.split("_")[1])
        path = write_nifti(tmp_path / "frames.nii.gz", np.random.rand(40, 48, 1, frames).astype(np.float32))
        message = f"is a 4D NIfTI of {frames} frames"
    elif case == "multiframe":
        import shutil

        from pydicom.data import get_testdata_file

        path = Path(shutil.copy(get_testdata_file("SC_rgb_rle_2frame.dcm"), tmp_path / "two_frames.dcm"))
        message = "is a volume or multi-frame series"
    elif case == "volume":
        path = write_nifti(tmp_path / "vol.nii.gz", np.random.rand(8, 9, 10).astype(np.float32))
        message = "is a volume or multi-frame series of shape (8, 9, 10)"
    elif case == "nan":
        picture = _picture().astype(np.float32)
        picture[2, 3] = np.nan
        path, message = write_nifti(tmp_path / "nan.nii.gz", picture), "holds NaN or Inf pixels"
    elif case == "corrupt":
        path = tmp_path / "broken.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 8)
        message = "cannot read 'image' file"
    else:
        path = tmp_path / "scan.xyz"
        path.write_bytes(b"whatever")
        message = "is not a NIfTI, PNG, JPEG, BMP or DICOM file"
    chain = mri_transforms(size=16, augment=False, signal=False, track_meta=True) if case == "strip" else \
        image_transforms(size=16)
    dataset = SkippingDataset([{"image": str(path), "name": path.name}], chain)
    assert list(dataset) == []  # skipped, not fatal
    reason = dataset.failure({"image": str(path), "name": path.name})
    assert str(path) in reason and message in reason


def test_slices_stored_with_a_singleton_axis_are_2d(tmp_path):
    picture = _picture().astype(np.float32)
    flat = write_nifti(tmp_path / "flat.nii.gz", picture)
    slab = write_nifti(tmp_path / "slab.nii.gz", picture[..., None])
    dicom = write_dicom(tmp_path / "one_frame.dcm", picture.astype(np.uint16))
    chain = mri_transforms(size=32, augment=False, signal=False, track_meta=True)
    outputs = [chain({"image": str(p)})["image"] for p in (flat, slab)]
    torch.testing.assert_close(outputs[0].as_tensor(), outputs[1].as_tensor())
    assert decode_shape(outputs[1].meta["source_shape"]) == (30, 44, 1)
    assert chain({"image": str(dicom)})["image"].shape == (1, 32, 32)


def _round_trip(path, chain, tmp_path, name):
    """The preprocessed image as a 'map', put back on the source's grid and written, as inference does."""
    item = chain({"image": str(path), "name": name})
    item["x_comp"] = item["image"].as_tensor().clone()
    item = InvertToSourced("x_comp", transform=chain)(item)
    SaveOnSourceGridd("x_comp", output_dir=tmp_path / "maps")(item)
    return nib.load(str(tmp_path / "maps" / f"{name}_x_comp.nii.gz"))


@pytest.mark.parametrize("fmt", ["png", "jpg", "dcm", "nii", "nii_slab"])
@pytest.mark.parametrize("task_chain", ["image", "mri"])
def test_maps_land_on_the_source_grid(tmp_path, fmt, task_chain):
    """Written maps have the shape and affine MONAI's loader gives the source and overlay it: the inverted model
    input correlates with the source's own pixels (a transposed or flipped map would not)."""
    picture = _picture()
    affine = np.array([[0, -0.8, 0, 10], [0.7, 0, 0, -5], [0, 0, 2.5, 30], [0, 0, 0, 1.0]])
    if fmt in ("png", "jpg"):
        path = write_gray(tmp_path / f"scan.{fmt}", picture)
    elif fmt == "dcm":
        path = write_dicom(tmp_path / "scan.dcm", picture.astype(np.uint16))
    else:
        path = write_nifti(tmp_path / "scan.nii.gz", (picture[..., None] if fmt == "nii_slab" else picture)
                           .astype(np.float32), affine=affine)
    chain = (image_transforms(size=24, track_meta=True) if task_chain == "image"
             else mri_transforms(size=24, augment=False, signal=False, track_meta=True))
    written = _round_trip(path, chain, tmp_path, path.name)
    source = LoadImage(image_only=True, reader=image_readers()[image_format(path)])(str(path))
    assert written.shape == tuple(source.shape)
    np.testing.assert_allclose(written.affine, np.asarray(source.meta["affine"]), atol=1e-6)
    assert _corr(written.get_fdata(), source.numpy()) > 0.9
    if fmt != "dcm":  # MONAI's default loader agrees (for DICOM it picks ITK, which adds a slice axis)
        default = LoadImage(image_only=True)(str(path))
        assert written.shape == tuple(default.shape)
        np.testing.assert_allclose(written.affine, np.asarray(default.meta["affine"]), atol=1e-6)


@pytest.mark.parametrize("task_chain", ["image", "mri"])
def test_maps_of_one_source_inverted_together_equal_monai_inverting_each(tmp_path, task_chain):
    """Two maps of a DICOM, undone as the channels of one tensor, equal MONAI's own Invertd run on each alone."""
    path = write_dicom(tmp_path / "scan.dcm", _picture().astype(np.uint16))
    chain = (image_transforms(size=24, track_meta=True) if task_chain == "image"
             else mri_transforms(size=24, augment=False, signal=False, track_meta=True))
    item = chain({"image": str(path), "name": "scan"})
    rng = np.random.default_rng(0)
    maps = {key: torch.from_numpy(rng.normal(size=tuple(item["image"].shape)).astype(np.float32))
            for key in ("x_sens", "x_comp")}
    together = InvertToSourced(list(maps), transform=chain)({**item, **maps})
    for key, values in maps.items():
        alone = Invertd(key, transform=chain, orig_keys="image", nearest_interp=False)(
            {**item, key: MetaTensor(values.clone())})
        assert together[key].shape == alone[key].shape
        torch.testing.assert_close(together[key].as_tensor(), alone[key].as_tensor())
        np.testing.assert_allclose(np.asarray(together[key].meta["affine"]), np.asarray(alone[key].meta["affine"]))


def test_an_image_made_in_memory_is_its_own_grid(tmp_path):
    image = torch.rand(1, 12, 10)
    chain = Compose([Resized("image", spatial_size=(12, 10)), AsOwnGridd("image")])
    item = chain({"image": image, "image_path": "phantom", "name": "p0"})
    item["x_sens"] = image * 0.5
    item = InvertToSourced("x_sens", transform=chain)(item)
    SaveOnSourceGridd("x_sens", output_dir=tmp_path)(item)
    written = nib.load(str(tmp_path / "p0_x_sens.nii.gz"))
    assert written.shape == (12, 10) and np.allclose(written.affine, np.eye(4))
    np.testing.assert_allclose(written.get_fdata(), image[0].numpy() * 0.5, rtol=1e-6)


def test_a_header_claiming_a_huge_image_is_refused_before_loading(tmp_path):
    """A 30000^2 float32 NIfTI header with no pixel data behind it: refused from the header, nothing allocated."""
    import gzip

    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000))
    header.set_data_dtype(np.float32)
    path = tmp_path / "claims.nii.gz"
    with gzip.open(path, "wb") as f:
        f.write(header.binaryblock + b"\0" * 4)  # the 348-byte header, the extension flag, no pixels
    assert path.stat().st_size < 100
    chain = image_transforms(size=16)
    dataset = SkippingDataset([{"image": str(path), "name": "claims.nii.gz"}], chain)
    assert list(dataset) == []
    reason = dataset.failure({"image": str(path), "name": "claims.nii.gz"})
    assert f"file {path} claims 900000000 voxels, more than max_voxels=268435456" in reason
    small = write_gray(tmp_path / "small.png", _picture())  # 30 x 44
    with pytest.raises(ValueError, match="claims 1320 voxels, more than max_voxels=1000"):
        LoadImageCheckedd("image", max_voxels=1000)({"image": str(small)})


@pytest.mark.timeout(60)
def test_links_back_to_a_parent_folder_do_not_loop(tmp_path):
    """Two links to the parent under the folder (a loop the walk could follow forever, in two ways at each level)
    and a link to a file already listed: each file is found once, by its first path."""
    root = tmp_path / "scans"
    write_gray(root / "a.png", _picture())
    write_gray(root / "sub" / "b.png", _picture())
    for name in ("loopA", "loopB"):
        (root / "sub" / name).symlink_to("..", target_is_directory=True)
    (root / "sub" / "again.png").symlink_to(root / "a.png")
    entries = folder_datalist(root)
    assert [e["name"] for e in entries] == ["a.png", "sub/b.png"]


def test_what_the_listing_cannot_look_at_is_named_not_dropped(tmp_path):
    """A link to nothing and a folder whose path is over the system's limit (so it cannot be listed, even by
    root): both are skipped entries with their reason, beside the image that is analysed; a --dataset_dir that
    cannot be read at all says so."""
    import errno
    import os

    root = tmp_path / "scans"
    write_gray(root / "a.png", _picture())
    (root / "gone.png").symlink_to(root / "missing.png")
    here = os.getcwd()
    try:  # nested folders whose full path passes PATH_MAX, made one relative step at a time
        os.chdir(root)
        for _ in range(24):
            os.mkdir("d" * 200)
            os.chdir("d" * 200)
    finally:
        os.chdir(here)
    entries = folder_datalist(root)
    assert entries[0] == {"image": str(root / "a.png"), "name": "a.png"}
    problems = {e["name"]: e["problem"] for e in entries[1:]}
    assert "gone.png" in problems and "a symbolic link to" in problems["gone.png"]
    too_long = [reason for name, reason in problems.items() if name.startswith("d" * 200)]
    assert len(too_long) == 1 and os.strerror(errno.ENAMETOOLONG) in too_long[0]
    dataset = SkippingDataset(entries, image_transforms(size=16))
    assert len(list(dataset)) == 1  # the image; the others skipped, not fatal
    assert dataset.failure(entries[1]) == entries[1]["problem"]


def test_a_dataset_dir_that_cannot_be_read_says_so(tmp_path, monkeypatch):
    """The tests run as root, whom permissions do not stop: the refusal the OS gives others is simulated."""
    import os

    root = tmp_path / "locked"
    write_gray(root / "a.png", _picture())
    real_scandir = os.scandir

    def refuse(path="."):
        if os.fspath(path) == os.fspath(root):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    with pytest.raises(PermissionError, match=f"cannot read --dataset_dir {root}: folder cannot be listed: "
                                              "Permission denied"):
        folder_datalist(root)


def test_earlier_runs_are_not_read_back_when_the_output_folder_is_the_input_folder(tmp_path):
    """--output_dir equal to --dataset_dir: the maps and figures of earlier runs (in their run folders) are not
    inputs; a user's own folder that only starts alike is."""
    write_gray(tmp_path / "a.png", _picture())
    write_nifti(tmp_path / "run-20261202-040000" / "a.png_x_sens.nii.gz", _picture().astype(np.float32))
    write_gray(tmp_path / "run-20261202-040000-2" / "a.png_ifim.png", _picture())
    write_gray(tmp_path / "run-notes" / "b.png", _picture())
    files = find_image_files(tmp_path, exclude=[tmp_path])[0]
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a.png", "run-notes/b.png"]
    assert len(find_image_files(tmp_path)[0]) == 4  # not the output folder: every file is an input


@pytest.mark.parametrize("name", ["SC_rgb.dcm", "SC_ybr_full_uncompressed.dcm", "US1_UNCR.dcm", "OBXXXX1A.dcm",
                                  "gdcm-US-ALOKA-16.dcm"])
def test_colour_and_palette_dicoms_read_as_the_picture_they_show(name):
    """Real colour DICOMs of pydicom-data (RGB, YBR, ultrasound, palette): the model's gray input is the BT.601 luma
    of what pydicom shows (the palette applied), rows x columns, not the palette indices or a 3-slice volume."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_color_lut

    path = get_testdata_file(name)
    dataset = pydicom.dcmread(path)
    shown = dataset.pixel_array
    if str(dataset.PhotometricInterpretation).upper() == "PALETTE COLOR":
        shown = apply_color_lut(shown, dataset)
    luma = shown[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    from scripts.sources import EnsureSpatialDimsd
    from scripts.transforms import EnsureGrayscaled

    image = Compose([LoadImageCheckedd("image"), EnsureSpatialDimsd("image"), RowsColumnsd("image"),
                     EnsureGrayscaled("image")])({"image": path})["image"]
    assert tuple(image.shape) == (1, *luma.shape)
    np.testing.assert_allclose(image[0].numpy(), luma, rtol=1e-5, atol=1e-3)
    if str(dataset.PhotometricInterpretation).upper() == "PALETTE COLOR":
        assert _corr(image[0].numpy(), dataset.pixel_array) < 0.99  # not the indices


def _pydicom_data_files():
    """The compressed DICOMs of pydicom-data (JPEG baseline / lossless / 12-bit, JPEG-LS, JPEG 2000, RLE)."""
    import glob

    import pydicom
    from pydicom.data import get_testdata_file

    folder = Path(get_testdata_file("JPEG-LL.dcm")).parent
    names = []
    for path in sorted(glob.glob(str(folder / "*.dcm"))):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # OT-PAL-8-face has no preamble: the skip-reason test covers it
            continue
        if header.file_meta.TransferSyntaxUID.is_compressed and "too_short" not in path:
            names.append(Path(path).name)
    return names


@pytest.mark.parametrize("name", _pydicom_data_files())
def test_compressed_dicoms_read_as_pydicom_shows_them(name):
    """Every compressed transfer syntax of pydicom-data decodes (the pinned pylibjpeg, openjpeg and CharLS plugins)
    and reads as the independent reading: pydicom's pixels, modality LUT, MONOCHROME1 inverted, colour as luma;
    a multi-frame file is refused as such."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut

    from scripts.sources import EnsureSpatialDimsd
    from scripts.transforms import EnsureGrayscaled, InvertMonochrome1d

    path = get_testdata_file(name)
    dataset = pydicom.dcmread(path)
    chain = Compose([LoadImageCheckedd("image"), EnsureSpatialDimsd("image"), RowsColumnsd("image"),
                     InvertMonochrome1d("image"), EnsureGrayscaled("image")])
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        reason = SkippingDataset([], chain).failure({"image": path})
        assert (f"is a volume or multi-frame series of {dataset.NumberOfFrames} frames of {dataset.Rows} x "
                f"{dataset.Columns} pixels") in reason
        return
    shown = dataset.pixel_array.astype(np.float64)
    if str(dataset.PhotometricInterpretation).upper() == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        shown = apply_color_lut(dataset.pixel_array, dataset).astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    elif int(dataset.get("SamplesPerPixel", 1)) > 1:
        shown = shown[..., :3] @ np.array([0.299, 0.587, 0.114])
    else:
        shown = np.asarray(apply_modality_lut(shown, dataset), dtype=np.float64)
        if str(dataset.PhotometricInterpretation).upper() == "MONOCHROME1":
            shown = shown.max() + shown.min() - shown
    image = chain({"image": path})["image"]
    assert tuple(image.shape) == (1, *shown.shape)
    np.testing.assert_allclose(image[0].numpy(), shown, rtol=1e-5, atol=1e-3 * max(1.0, np.abs(shown).max()))


def test_a_skip_reason_keeps_every_line_of_the_error():
    """pydicom lists the missing decoders on the lines after its first: a skip reason keeps them all."""
    def raise_multiline(entry):
        raise ValueError("cannot decode: all plugins are missing dependencies:\n    gdcm - requires gdcm\n"
                         "    pylibjpeg - requires pylibjpeg\n")

    dataset = SkippingDataset([{"image": "x", "name": "x"}], transform=raise_multiline)
    assert list(dataset) == []
    assert dataset.failure({"image": "x", "name": "x"}) == ("cannot decode: all plugins are missing dependencies: "
                                                            "gdcm - requires gdcm pylibjpeg - requires pylibjpeg")


def test_dicoms_without_preamble_or_image_are_read_or_named(tmp_path):
    """pydicom-data's OT-PAL-8-face has no preamble and no file meta: found without a suffix too and read through
    its palette; an RT plan (no pixels) is skipped with a reason saying so; a text file is no input."""
    import shutil

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_color_lut
    from pydicom.uid import ImplicitVRLittleEndian

    from scripts.sources import EnsureSpatialDimsd
    from scripts.transforms import EnsureGrayscaled

    face = get_testdata_file("OT-PAL-8-face.dcm")
    shutil.copy(face, tmp_path / "IM0001")
    shutil.copy(face, tmp_path / "face.dcm")
    shutil.copy(get_testdata_file("rtplan.dcm"), tmp_path / "plan.dcm")
    (tmp_path / "README").write_text("scans exported by hand\n")
    entries = folder_datalist(tmp_path)
    assert [e["name"] for e in entries] == ["IM0001", "face.dcm", "plan.dcm"]
    dataset = pydicom.dcmread(face, force=True)
    dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    luma = apply_color_lut(dataset.pixel_array, dataset).astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    chain = Compose([LoadImageCheckedd("image"), EnsureSpatialDimsd("image"), RowsColumnsd("image"),
                     EnsureGrayscaled("image")])
    for entry in entries[:2]:
        np.testing.assert_allclose(chain(dict(entry))["image"][0].numpy(), luma, rtol=1e-5, atol=1e-3)
    reason = SkippingDataset([], chain).failure(entries[2])
    assert "plan.dcm" in reason and "RTPLAN object without an image" in reason


def test_the_pad_band_is_as_dark_as_the_darkest_pixel(tmp_path):
    """A CT-like image whose darkest value is below 0 (JPEG2000_UNC's minimum is -30): the MRI chain pads it to a
    square before scaling intensities, and the band must enter the model at the darkest pixel's level, not at 0."""
    picture = (_picture(30, 44) - 70).astype(np.float32)  # values from about -30 up
    assert picture.min() < 0
    path = write_nifti(tmp_path / "ct.nii.gz", picture)
    image = mri_transforms(size=32, augment=False, signal=False)({"image": str(path)})["image"][0]
    assert tuple(image.shape) == (32, 32)  # 30 x 44 -> 22 x 32 along its longest side, padded by 5 lines each side
    padded_axis = 0 if torch.cat([image[:5], image[-5:]]).std() == 0 else 1
    band = torch.cat([image.movedim(padded_axis, 0)[:5], image.movedim(padded_axis, 0)[-5:]])
    inside = image.movedim(padded_axis, 0)[5:-5]
    assert float(band.std()) == 0 and float(inside.std()) > 0.1
    assert float(band[0, 0]) == pytest.approx(float(inside.min()), abs=1e-6)


def test_an_off_task_dicom_is_analysed_with_a_warning(caplog):
    """An ultrasound (palette colour) given to the MRI model: analysed, with a warning naming the file, its
    modality and the task's; an MR slice passes without one."""
    import logging

    from pydicom.data import get_testdata_file

    from scripts.tasks import task_transforms

    chain = task_transforms("sksbks", 32, evaluation=True)
    ultrasound, mr = get_testdata_file("OBXXXX1A.dcm"), get_testdata_file("MR_small.dcm")
    with caplog.at_level(logging.WARNING, logger="scripts.sources"):
        assert chain({"image": ultrasound})["image"].shape == (1, 32, 32)
        chain({"image": mr})
    warnings = [r.getMessage() for r in caplog.records if r.name == "scripts.sources"]
    assert len(warnings) == 1 and ultrasound in warnings[0]
    assert "its Modality is US, the model's task 'sksbks' has MR images and it is a colour image" in warnings[0]
