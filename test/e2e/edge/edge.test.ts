import { edgeSuite } from '../../helpers/edge-e2e.ts';

// images/edge-amd64.yaml from generated K3s, Kine and kube-vip release files: test/helpers/edge-e2e.ts.
edgeSuite('amd64');
