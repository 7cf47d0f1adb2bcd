import { edgeSuite } from '../../helpers/edge-e2e.ts';

// images/edge-arm64.yaml from the same kind of generated release files as the amd64 suite, built on
// this host through qemu-user (binfmt), as the arm64 test image is. Its own suite: an arm64 root with
// no cached base takes about 17 minutes, a few from the cached base. CI runs it beside failover.
edgeSuite('arm64');
