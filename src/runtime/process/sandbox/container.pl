# Container launcher: like launch.pl (same chain, same stdin protocol style, same cgroups, seccomp
# and PID-1 duty) but the program runs in its own root: an ext4 image (through a read-only loop
# device) or a root filesystem dir (bound read-only), under an overlayfs whose writable layer lives
# on a tmpfs private to this mount namespace. Nothing is mounted in the host's namespace: when the
# launcher (PID 1) ends, the namespace and its mounts go, and the loop device (LO_FLAGS_AUTOCLEAR)
# detaches itself. The forwarder stays outside (the host's root, the same network namespace), so
# the image needs nothing of ours.
#  1. read the assignment from stdin; 2. join the cgroups; 3. tmpfs staging at /tmp (private);
#  4. lower: loop-mount the image read-only (or bind the dir read-only); record the loop device in
#     the record file (the runtime waits for it to go, and removes it after a crash);
#  5. overlay = lower + upper/work on the staging tmpfs; proc, a minimal /dev, /dev/shm in it;
#     writable paths made and given to the program's user;
#  6. pivot_root into it and detach the host's root; loopback up;
#  7. fork: drop capabilities, setgroups/gid/uid, no_new_privs, seccomp, chdir, exec; 8. reap.
# stdin, NUL-separated: the 3 cgroup `tasks` files, kind (image|rootfs), source path, record file,
#   uid, gid, tmpfs MiB, syscall numbers "mount,setgroups,setresgid,setresuid,prctl,pivot_root,
#   umount2,mknodat", seccomp filter (hex), workdir, N, N writable paths, argc, argv, env K=V records.
# No `use strict; use warnings;` (load time); the unit test checks the file with both. The steps it
# shares with launch.pl are in common.pl.

# common.pl lies beside this file (a relative path needs ./ or require searches @INC instead)
BEGIN { my $d = __FILE__ =~ m{^(.*)/} ? $1 : '.'; require($d =~ m{^/} ? "$d/common.pl" : "./$d/common.pl"); }
our $WHO;
$WHO = 'aether container';
# 1.
my @in = read_assignment();
fail('no assignment') unless @in >= 14;
my ($cg1, $cg2, $cg3, $kind, $src, $record, $uid, $gid, $tmp_mb, $nrs, $filter, $workdir, $nw) = splice(@in, 0, 13);
my @writable = splice(@in, 0, $nw);
my $argc = shift(@in) // 0;
my @argv = splice(@in, 0, $argc);
fail('usage') unless @argv && @argv == $argc && ($kind eq 'image' || $kind eq 'rootfs');
$0 = "$0 $src";
my ($SYS_pivot_root, $SYS_umount2, $SYS_mknodat) = syscall_numbers($nrs);
$uid += 0;
$gid += 0;
my ($MS_RDONLY, $MS_NOSUID, $MS_NODEV, $MS_NOEXEC, $MS_REMOUNT, $MS_BIND, $MS_REC) = (1, 2, 4, 8, 32, 4096, 16384);
my $fprog = seccomp_prog($filter);
my $env = env_of(@in);

# 2. (common.pl: `tasks` of the single thread)
join_cgroups($cg1, $cg2, $cg3);

my $nosd = $MS_NOSUID | $MS_NODEV;

# The artifact and the record file may live under /tmp, about to be covered: open them first.
sysopen(my $srcfh, $src, 0) or fail("open $src");
open(my $recfh, '>', $record) or fail("open $record");
# 3. Not nodev: the loop device node is made here when the host's /dev lacks it (no udev).
my $st = '/tmp';
mnt('aether-ctr', $st, 'tmpfs', $MS_NOSUID, "mode=0700,size=${tmp_mb}m");
mkdir "$st/$_" or fail("mkdir $st/$_") for qw(lower upper work root);

# 4.
if ($kind eq 'image') {
  open(my $ctl, '<', '/dev/loop-control') or fail('open /dev/loop-control');
  my ($loopfh, $n);
  for my $try (1 .. 20) {
    $n = ioctl($ctl, 0x4C82, 0);                                  # LOOP_CTL_GET_FREE
    fail('no free loop device') unless defined $n;
    $n += 0;
    my $dev = "/dev/loop$n";
    unless (-b $dev) {
      open(my $dfh, '<', "/sys/block/loop$n/dev") or fail("loop$n has no sysfs entry");
      my ($ma, $mi) = (<$dfh> // '') =~ /^(\d+):(\d+)/ or fail("loop$n dev number");
      close($dfh);
      $dev = "$st/loop$n";
      my $rdev = ($mi & 0xff) | (($ma & 0xfff) << 8) | (($mi & ~0xff) << 12);
      syscall($SYS_mknodat, -100, $dev, 0060600, $rdev) == 0 or fail("mknod $dev");
    }
    sysopen($loopfh, $dev, 0) or fail("open $dev");
    # struct loop_config { u32 fd, block_size; struct loop_info64 info (232 bytes); u64 reserved[8] }
    # info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR: it detaches when the mount goes
    my $info = pack('Q5 L4 a64 a64 a32 Q2', 0, 0, 0, 0, 0, 0, 0, 0, 1 | 4, substr($src, -63), '', '', 0, 0);
    last if ioctl($loopfh, 0x4C0A, pack('L L a232 x64', fileno($srcfh), 0, $info));   # LOOP_CONFIGURE
    fail("configure loop$n") unless $!{EBUSY};                    # taken meanwhile: another one
    close($loopfh);
    undef $loopfh;
  }
  fail('no loop device could be configured') unless $loopfh;
  syswrite($recfh, "loop$n\n") or fail("write $record");
  try_mnt('/proc/self/fd/' . fileno($loopfh), "$st/lower", 'ext4', $MS_RDONLY | $nosd, 'noload')
    or try_mnt('/proc/self/fd/' . fileno($loopfh), "$st/lower", 'ext4', $MS_RDONLY | $nosd, 0)
    or fail("mount the image $src (loop$n)");
  close($loopfh);
} else {
  mnt('/proc/self/fd/' . fileno($srcfh), "$st/lower", 0, $MS_BIND | $MS_REC, 0);
  mnt(0, "$st/lower", 0, $MS_BIND | $MS_REMOUNT | $MS_RDONLY | $nosd, 0);
}
close($srcfh);
close($recfh);

# 5.
my $r = "$st/root";
mnt('aether-root', $r, 'overlay', $nosd, "lowerdir=$st/lower,upperdir=$st/upper,workdir=$st/work");
for my $d (qw(proc dev tmp)) { mkdir "$r/$d" unless -d "$r/$d"; }
mnt('proc', "$r/proc", 'proc', $nosd | $MS_NOEXEC, 0);
mnt('aether-dev', "$r/dev", 'tmpfs', $MS_NOSUID | $MS_NOEXEC, 'mode=0755,size=64k');
for my $d (qw(null zero full random urandom tty)) {
  next unless -e "/dev/$d";
  open(my $fh, '>', "$r/dev/$d") or fail("create /dev/$d");
  close($fh);
  mnt("/dev/$d", "$r/dev/$d", 0, $MS_BIND, 0);
}
mkdir "$r/dev/shm";
mnt('aether-shm', "$r/dev/shm", 'tmpfs', $nosd, "mode=1777,size=${tmp_mb}m");
symlink('/proc/self/fd', "$r/dev/fd");
symlink("/proc/self/fd/$_->[1]", "$r/dev/$_->[0]") for (['stdin', 0], ['stdout', 1], ['stderr', 2]);
for my $w (@writable, $workdir) {
  next unless length $w && $w =~ m{^/};
  my $p = $r;
  for my $part (grep { length && $_ ne '.' && $_ ne '..' } split m{/}, $w) { $p .= "/$part"; mkdir $p unless -e $p; }
}
for my $w (@writable) {
  next unless length $w && $w =~ m{^/} && $w !~ m{(^|/)\.\.(/|$)};
  # lchown: a symlink in the image must not hand the user some other file
  chown($uid, $gid, "$r$w") if -d "$r$w" && !-l "$r$w";
}

# 6. pivot_root(".", "."): the old root ends up under the new one, then is detached from the tree
chdir($r) or fail("chdir $r");
my ($dot1, $dot2) = ('.', '.');
syscall($SYS_pivot_root, $dot1, $dot2) == 0 or fail('pivot_root');
syscall($SYS_umount2, $dot1, 2) == 0 or fail('detach the host root');   # MNT_DETACH
chdir('/') or fail('chdir /');
lo_up();

# 7. + 8.
run_program($uid, $gid, $workdir, $fprog, $env, @argv);
