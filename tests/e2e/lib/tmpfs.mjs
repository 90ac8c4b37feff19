// A small tmpfs for the fault tests that fill a disk (faults_spool,
// faults_ledger_disk): mount it, fill it to the last byte with a filler
// file the test deletes to give the space back, unmount it.
import { execFileSync } from 'node:child_process';
import { openSync, writeSync, closeSync } from 'node:fs';
import path from 'node:path';

// Mounts a tmpfs of `size` (e.g. '4m') on dir; returns null, or why it
// could not (the reason a test skips with: it needs root, as CI runs).
export function mountTmpfs(dir, size) {
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'pipe' });
    return null;
  } catch (e) {
    return `mount -t tmpfs refused here: ${String(e.stderr || e.message).trim()}`;
  }
}

// Unmounts it; a busy mount (a process still holds a file there) is
// detached lazily instead, with a warning; throws when neither works.
export function umountTmpfs(dir) {
  try {
    execFileSync('umount', [dir], { stdio: 'pipe' });
    return;
  } catch (e) {
    const first = String(e.stderr || e.message).trim();
    try {
      execFileSync('umount', ['-l', dir], { stdio: 'pipe' });
      console.warn(`umount ${dir} failed (${first}); detached it with umount -l`);
    } catch (e2) {
      throw new Error(`cannot unmount the tmpfs on ${dir}: umount: ${first}; umount -l: ${String(e2.stderr || e2.message).trim()}`);
    }
  }
}

// Fills the file system of dir to the last byte; returns the filler's path.
export function fill(dir) {
  const p = path.join(dir, 'filler');
  const fd = openSync(p, 'w');
  const chunk = Buffer.alloc(4096, 0x66);
  try {
    for (;;) writeSync(fd, chunk);
  } catch (e) {
    if (e.code !== 'ENOSPC') throw e;
    for (;;) { try { writeSync(fd, chunk, 0, 1); } catch { break; } } // the last bytes too
  } finally {
    closeSync(fd);
  }
  return p;
}
