"""What the benchmarks share: the processes they start, and reading CPU time and peak RSS
from /proc (VmHWM, not ru_maxrss: a child's ru_maxrss starts at its forking parent's RSS,
which would hide a small child's real peak)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


class Children:
    """Every process a bench starts, so that any exit stops them (by pid)."""

    def __init__(self):
        self.procs = []

    def start(self, argv, **kwargs):
        proc = subprocess.Popen([str(a) for a in argv], start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def reap(self, proc):
        """Waits for `proc` with wait4: its exit code and its own rusage (its waited-for
        children included: a runner's pg_dump counts for the runner)."""
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        self.procs.remove(proc)
        return proc.returncode, usage

    def stop_all(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)  # its session: the runner and its children
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        self.procs.clear()


def exit_on_signals():
    """SIGTERM and SIGHUP end the bench as SystemExit(128 + signal), and SIGINT as
    KeyboardInterrupt (also when started with it ignored), so every `finally` runs and
    what the bench started is stopped. A SIGHUP that nohup set to ignore stays ignored."""
    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, on_signal)


def cpu_of(usage):
    return usage.ru_utime + usage.ru_stime


def proc_cpu(pid, children=True):
    """CPU seconds of `pid` from /proc (with the children it reaped), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + ((cutime + cstime) if children else 0)) / TICK


def vm_hwm_mb(pid="self"):
    """Peak RSS of a process in MB (0.0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def system_busy():
    """CPU seconds all processes on the machine have used since boot (not idle/iowait)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICK


class OssServer:
    """`l2c-backup oss-server` in its own process, keeping its objects under `data`
    (removed at exit unless keep_data, for a bench that reuses its objects)."""

    def __init__(self, children, data, log_path, bucket="l2c-backups", keep_data=False):
        self.children, self.data, self.log_path = children, data, log_path
        self.bucket, self.keep_data = bucket, keep_data
        self.proc = None

    def __enter__(self):
        self.log = open(self.log_path, "ab")
        self.proc = self.children.start(
            [sys.executable, "-m", "l2c_backup.cli", "oss-server", "--port", "0", "--json",
             "--data", self.data, "--bucket", self.bucket],
            stdout=subprocess.PIPE, stderr=self.log)
        line = self.proc.stdout.readline()
        if not line:
            with open(self.log_path, errors="replace") as f:
                raise RuntimeError(f"the OSS server did not start: {f.read()[-2000:]}")
        self.details = json.loads(line)
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: it stops serving and exits
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc in self.children.procs:
            self.children.procs.remove(self.proc)
        self.proc.stdout.close()
        self.log.close()
        if not self.keep_data:
            shutil.rmtree(self.data, ignore_errors=True)

    def env(self):
        d = self.details
        return {"OSS_ENDPOINT": d["endpoint"], "OSS_BACKUP_BUCKET": self.bucket,
                "OSS_ACCESS_KEY_ID": d["access_key_id"], "OSS_ACCESS_KEY_SECRET": d["access_key_secret"]}
