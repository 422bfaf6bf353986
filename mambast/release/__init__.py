"""The authors' release, installed in one step: the three weights files (and the VGG of the
training losses) fetched from the authors' Google Drive folder or taken from what the user
downloaded, each checked before it is put in place (``python -m mambast download``, and the
MambaST Loader's download in ComfyUI)."""

from .drive import AUTHORS_FOLDER, DownloadStopped, DriveClient, DriveError, FolderClient, RemoteFile, default_client
from .install import (RELEASED_NAMES, VGG_NAME, FileProgress, InstallError, InstallReport, comfyui_weights_folder,
                      download_weights, identify, install_from, manual_steps)

__all__ = ["AUTHORS_FOLDER", "RELEASED_NAMES", "VGG_NAME", "DownloadStopped", "DriveClient", "DriveError",
           "FileProgress", "FolderClient", "InstallError", "InstallReport", "RemoteFile", "comfyui_weights_folder",
           "default_client", "download_weights", "identify", "install_from", "manual_steps"]
