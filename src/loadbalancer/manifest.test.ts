/**
 * Kubernetes Service manifests: what a cluster's YAML says becomes the same services, every
 * problem of a file is named by document and manifest path, and what is not supported is refused.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { servicesFromManifest, type ManifestProblem } from './manifest.ts';
import { ServiceError } from './errors.ts';
import { serviceRequestSchema } from './service.ts';

const schema = serviceRequestSchema({ serviceCidr: '10.96.0.0/16', nodePortRange: { min: 30000, max: 32767 }, clusterCidr: '10.244.0.0/16' });

const WEB = `apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: { app: web }
spec:
  type: NodePort
  selector: { app: web }
  ports:
    - name: http
      protocol: TCP
      port: 80
      targetPort: 8080
      nodePort: 30080
      appProtocol: http
    - name: dns
      protocol: UDP
      port: 53
      targetPort: dns
  sessionAffinity: ClientIP
  sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } }
  externalTrafficPolicy: Cluster
  ipFamilies: [IPv4]
---
apiVersion: v1
kind: Service
metadata: { name: db }
spec:
  clusterIP: 10.96.0.53
  clusterIPs: [10.96.0.53]
  ports: [{ port: 5432 }]
`;

function problems(text: string): ManifestProblem[] {
  try {
    servicesFromManifest(text, 'svc.yaml', schema);
  } catch (error) {
    assert.ok(ServiceError.is(error, 'ERR_SERVICE_INVALID'), String(error));
    assert.match((error as Error).message, /^svc\.yaml: document \d+: .*nothing was created$/);
    return ((error as ServiceError).details as { problems: ManifestProblem[] }).problems;
  }
  assert.fail('the manifest was accepted');
}

test('a manifest\'s Services become service requests', () => {
  const [web, db] = servicesFromManifest(WEB, 'svc.yaml', schema);
  assert.deepEqual(
    { name: web.name, namespace: web.namespace, type: web.type, selector: web.selector, ports: web.ports, affinity: web.sessionAffinity, timeout: web.sessionAffinityConfig?.clientIP.timeoutSeconds },
    {
      name: 'web',
      namespace: 'shop',
      type: 'NodePort',
      selector: { app: 'web' },
      ports: [
        { name: 'http', protocol: 'TCP', port: 80, targetPort: 8080, nodePort: 30080 },
        { name: 'dns', protocol: 'UDP', port: 53, targetPort: 'dns' },
      ],
      affinity: 'ClientIP',
      timeout: 60,
    },
  );
  assert.deepEqual({ name: db.name, namespace: db.namespace, clusterIP: db.clusterIP }, { name: 'db', namespace: 'default', clusterIP: '10.96.0.53' });
});

test('every problem is named by document and manifest path; what is not supported is refused', () => {
  const bad = `apiVersion: v1
kind: Service
metadata: { name: a }
spec:
  ports: [{ port: 70000, protocol: ICMP }]
---
apiVersion: v1
kind: Service
metadata: { name: b }
spec:
  clusterIP: None
  ports: [{ port: 80, targetPort: http }]
  internalTrafficPolicy: Local
  topologyKeys: [x]
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: c }
---
apiVersion: v1
kind: Service
metadata: { name: d }
spec:
  ports: [{ port: 80 }]
  selector: { "bad key!": x }
---
apiVersion: v1
kind: Service
metadata: { name: e }
spec:
  ports: [{ name: a, port: 80, targetPort: http }, { name: b, port: 81, targetPort: "8080" }]
`;
  assert.deepEqual(
    problems(bad).map((p) => `${p.document} ${p.path}: ${p.message.split(':')[0]}`),
    [
      '1 spec.ports[0].protocol: must be one of TCP, UDP, SCTP',
      '1 spec.ports[0].port: must be 1-65535',
      '2 spec.topologyKeys: not supported',
      '2 spec.clusterIP: headless services (clusterIP None) are not supported',
      '2 spec.internalTrafficPolicy: only Cluster is supported yet',
      '3 kind: want apiVersion v1, kind Service; got apps/v1 Deployment',
      '4 spec.selector.bad key!: label key "bad key!"',
      '5 spec.ports[1].targetPort: must contain a letter and no "--"',
      '5 spec.ports[0].targetPort: a named target port ("http") needs a selector',
      '5 spec.ports[1].targetPort: a named target port ("8080") needs a selector',
    ],
  );
  assert.deepEqual(problems('apiVersion: v1\nkind: Service\nmetadata: { name: x }\nspec: { ports: [{ port: 1 }], ports: [] }\n').map((p) => p.path), ['(document)'], 'duplicate keys are refused');
});
