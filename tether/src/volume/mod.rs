//! Volumes (issue 15, not built yet): VIC's mounts in the container (disks by label, NFS,
//! copy-up of the image's files into an empty volume).
//!
//! Will own: the volume mounts. May use: `sys`, `boot` (the late SCSI scan brings the disks).
//! Must not touch sessions: the wiring mounts before the launch and reports a failure.
